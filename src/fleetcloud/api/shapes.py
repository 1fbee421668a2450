"""The JSON shapes the HTTP API takes and answers, as JSON Schema (draft 2020-12).

They describe what the handlers build by hand (``to_json`` methods, ``channel_json`` …)
for the OpenAPI document (``api.openapi``); test_openapi_conformance.py holds real
answers against them. Answers list what they may leave out (``optional``), requests
what they need (``required``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetcloud.apps.model import Status as InvocationStatus
from fleetcloud.commands.core.models import (
    COMMAND_TYPE_PATTERN,
    MAX_REQUEST_ID,
    REF_PATTERN,
    CommandStatus,
)
from fleetcloud.core.types import AgentKind, Role
from fleetcloud.jobs.states import ExecutionStatus, JobStatus

Schema = dict[str, Any]

# ---------------------------------------------------------------- schema building blocks

ID: Schema = {"type": "string", "pattern": "^[0-9]+$", "description": "a 64-bit id, as a string"}
ID_IN: Schema = {
    "type": ["string", "integer"],
    "description": "an id, as a string or an integer",
}
MS: Schema = {"type": "integer", "description": "Unix time in milliseconds"}
MS_OR_NULL: Schema = {"type": ["integer", "null"], "description": "Unix time in milliseconds"}
TEXT: Schema = {"type": "string"}
TEXT_OR_NULL: Schema = {"type": ["string", "null"]}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
OBJECT: Schema = {"type": "object"}
ANY: Schema = {"description": "any JSON value"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def choice(values: Iterable[str]) -> Schema:
    return {"enum": [str(value) for value in values]}


def record(
    properties: dict[str, Schema],
    *,
    optional: Iterable[str] = (),
    required: Iterable[str] | None = None,
    closed: bool = False,
) -> Schema:
    """An object schema. Answers name what they may leave out (``optional``); requests
    name what they need (``required``). ``closed`` refuses other keys, as the server does."""
    needed = (
        list(required)
        if required is not None
        else [key for key in properties if key not in set(optional)]
    )
    schema: Schema = {"type": "object", "properties": properties}
    if needed:
        schema["required"] = needed
    if closed:
        schema["additionalProperties"] = False
    return schema


# ---------------------------------------------------------------- shapes: data plane

AGGREGATE = record({"data": ANY, "attachments": array(ANY), "last_updated": MS_OR_NULL})
CHANNEL = record(
    {
        "id": ID,
        "name": TEXT,
        "owner_id": ID,
        "is_private": BOOLEAN,
        "aggregate_schema": {"type": ["object", "null"]},
        "message_schema": {"type": ["object", "null"]},
        "aggregate": ref("Aggregate"),
    },
    optional=["aggregate"],
)
MESSAGE = record(
    {
        "id": ID,
        "author_id": ID,
        "channel": record({"agent_id": ID, "name": TEXT}),
        "data": ANY,
        "attachments": array(ANY),
        "timestamp": MS,
    }
)
BATCH_ITEM_RESULT = record(
    {
        "agent_id": {"type": ["string", "null"]},
        "channel_name": TEXT_OR_NULL,
        "success": BOOLEAN,
        "message_id": ID,
        "error": TEXT,
        "status": INTEGER,
    },
    optional=["message_id", "error", "status"],
)
AGENT = record(
    {
        "id": ID,
        "organisation_id": ID,
        "kind": choice(AgentKind),
        "name": TEXT,
        "created_ms": MS,
    }
)

DATA_SCHEMAS: dict[str, Schema] = {
    "Error": record(
        {
            "error": {"type": "string", "description": "the error's class, e.g. NotFound"},
            "message": {"type": "string", "description": "what went wrong, for a person"},
            "status": {"type": "integer", "description": "the HTTP status, repeated"},
        }
    ),
    "Health": record({"status": TEXT, "schema_version": INTEGER, "bus": TEXT}),
    "Me": record({"agent_id": ID, "organisation_id": ID, "role": choice(Role)}),
    "Agent": AGENT,
    "NewAgent": record(
        {"name": TEXT, "kind": choice(["device", "user", "app"])}, required=["name"]
    ),
    "CreatedAgent": {
        "allOf": [
            AGENT,
            record({"agent_id": ID, "token": {"type": "string", "description": "shown once"}}),
        ]
    },
    "Channel": CHANNEL,
    "ChannelSettings": record(
        {
            "is_private": BOOLEAN,
            "message_schema": {"type": ["object", "null"], "description": "JSON Schema"},
            "aggregate_schema": {"type": ["object", "null"], "description": "JSON Schema"},
        },
        required=[],
    ),
    "Message": MESSAGE,
    "Publish": record(
        {
            "data": ANY,
            "ts": {"type": "number", "description": "when the reading was taken, ms"},
            "message_id": {**ID_IN, "description": "makes a retried publish idempotent"},
        },
        required=["data"],
    ),
    "MessageEdit": {
        "type": "object",
        "description": '{"data": …}, or the new data itself',
    },
    "Aggregate": AGGREGATE,
    "Timeseries": record(
        {
            "timestamps": array(MS),
            "values": {"type": "object", "additionalProperties": array(ANY)},
        }
    ),
    "BatchMessages": record(
        {
            "items": array(
                record(
                    {
                        "agent_id": ID_IN,
                        "channel_name": TEXT,
                        "data": ANY,
                        "message_id": ID_IN,
                        "ts": {"type": "number"},
                    },
                    required=["agent_id", "channel_name", "data"],
                )
            )
        },
        required=["items"],
    ),
    "BatchAggregates": record(
        {
            "items": array(
                record(
                    {
                        "agent_id": ID_IN,
                        "channel_name": TEXT,
                        "data": ANY,
                        "replace": {"type": "string", "description": "a dotted path"},
                    },
                    required=["agent_id", "channel_name", "data"],
                )
            )
        },
        required=["items"],
    ),
    "BatchResult": record(
        {
            "items": array(BATCH_ITEM_RESULT),
            "count": INTEGER,
            "succeeded": INTEGER,
            "failed": INTEGER,
        }
    ),
}

# ---------------------------------------------------------------- shapes: jobs (/api/v1)

EXECUTION_STATUS = choice(ExecutionStatus)
FAILURE_TYPES = ["FAILED", "REJECTED", "TIMED_OUT", "ALL"]
PARAMETER_SPEC = record(
    {
        "key": TEXT,
        "description": TEXT,
        "regex": TEXT,
        "optional": BOOLEAN,
        "default": ANY,
        "example": ANY,
    },
    optional=["regex", "default", "example"],
)
ABORT = record(
    {
        "failure_type": choice(FAILURE_TYPES),
        "threshold_percentage": {"type": "number", "minimum": 0, "maximum": 100},
        "min_finished": {"type": "integer", "minimum": 1},
    },
    required=["failure_type", "threshold_percentage"],
    closed=True,
)
RETRY = record(
    {
        "failure_type": choice(["FAILED", "TIMED_OUT", "ALL"]),
        "number_of_retries": {"type": "integer", "minimum": 0},
    },
    closed=True,
)
DEVICE = record(
    {
        "uuid": ID,
        "agent_id": ID,
        "name": TEXT,
        "organisation_id": ID,
        "created_at": MS,
        "groups": array(ID),
    }
)
PROVISIONING_KEY = record(
    {
        "id": ID,
        "organisation_id": ID,
        "label": TEXT,
        "created_at": MS,
        "expires_at": MS_OR_NULL,
        "max_uses": {"type": ["integer", "null"]},
        "uses": INTEGER,
    }
)
TIMEOUT_SECONDS: Schema = {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 3600}

JOBS_SCHEMAS: dict[str, Schema] = {
    "Register": record({"provisioning_key": TEXT, "name": TEXT}, required=["provisioning_key"]),
    "RegisteredDevice": record(
        {
            "uuid": ID,
            "agent_id": ID,
            "name": TEXT,
            "organisation_id": ID,
            "api_key": {
                "type": "string",
                "description": "shown once; the X-Device-API-Key and the data API token",
            },
            "created_at": MS,
        }
    ),
    "Device": DEVICE,
    "ProvisioningKey": PROVISIONING_KEY,
    "NewProvisioningKey": record(
        {
            "label": TEXT,
            "expires_in_seconds": {"type": "integer", "minimum": 1},
            "max_uses": {"type": "integer", "minimum": 1},
        },
        required=[],
        closed=True,
    ),
    "CreatedProvisioningKey": {
        "allOf": [
            PROVISIONING_KEY,
            record({"provisioning_key": {"type": "string", "description": "shown once"}}),
        ]
    },
    "Group": record(
        {
            "id": ID,
            "name": TEXT,
            "description": TEXT,
            "created_at": MS,
            "devices": array(ID),
            "device_count": INTEGER,
        }
    ),
    "NewGroup": record(
        {"name": TEXT, "description": TEXT, "devices": array(ID_IN)},
        required=["name"],
        closed=True,
    ),
    "GroupMembers": record({"devices": array(ID_IN)}, required=["devices"]),
    "JobDocument": {
        "type": "object",
        "description": "steps of runCommand or runHandler actions; see docs/jobs.md",
        "properties": {
            "version": {"const": "1.0"},
            "includeStdOut": ANY,
            "parallel": ANY,
            "steps": array(record({"action": OBJECT})),
            "finalStep": record({"action": OBJECT}),
        },
        "required": ["version", "steps"],
    },
    "Template": record(
        {
            "id": ID,
            "name": TEXT,
            "description": TEXT,
            "job_document": ref("JobDocument"),
            "parameters": array(PARAMETER_SPEC),
            "timeout_seconds": {"type": ["integer", "null"]},
            "builtin": BOOLEAN,
            "created_at": MS_OR_NULL,
            "updated_at": MS_OR_NULL,
        }
    ),
    "TemplateInput": record(
        {
            "name": TEXT,
            "description": TEXT,
            "job_document": ref("JobDocument"),
            "parameters": array(PARAMETER_SPEC),
            "timeout_seconds": TIMEOUT_SECONDS,
        },
        required=["name", "job_document"],
        closed=True,
    ),
    "Execute": record(
        {
            "job_name": TEXT,
            "description": TEXT,
            "template_id": {
                "type": ["string", "integer"],
                "description": "a template's id, or a built-in template's name",
            },
            "parameters": {"type": "object", "additionalProperties": ANY},
            "job_document": ref("JobDocument"),
            "target_type": choice(["device", "group", "all"]),
            "target_devices": array(ID_IN),
            "target_groups": array({"type": ["string", "integer"]}),
            "timeout_seconds": TIMEOUT_SECONDS,
            "maximum_per_minute": {"type": "integer", "minimum": 1, "maximum": 1000},
            "abort_criteria": array(ABORT),
            "retries": array(RETRY),
        },
        required=["job_name", "target_type"],
        closed=True,
    ),
    "Job": record(
        {
            "job_id": ID,
            "job_name": TEXT,
            "description": TEXT,
            "status": choice(JobStatus),
            "reason": TEXT_OR_NULL,
            "force_canceled": BOOLEAN,
            "target_type": choice(["device", "group", "all"]),
            "targets": array(TEXT),
            "template_id": {"type": ["string", "null"]},
            "parameters": OBJECT,
            "job_document": ref("JobDocument"),
            "timeout_seconds": INTEGER,
            "maximum_per_minute": {"type": ["integer", "null"]},
            "abort_criteria": array(ABORT),
            "retries": array(RETRY),
            "created_by": ID,
            "created_at": MS,
            "updated_at": MS,
            "completed_at": MS_OR_NULL,
            "counts": {
                "type": "object",
                "description": "devices per state of their latest execution, "
                "pending_rollout and total",
                "additionalProperties": INTEGER,
                "required": [*map(str, ExecutionStatus), "pending_rollout", "total"],
            },
        }
    ),
    "CancelJob": record({"force": BOOLEAN, "reason": TEXT}, required=[]),
    "StopExecution": record({"force": BOOLEAN}, required=[]),
    "Execution": record(
        {
            "execution_id": ID,
            "job_id": ID,
            "job_name": TEXT,
            "device_uuid": ID,
            "execution_number": INTEGER,
            "status": EXECUTION_STATUS,
            "version": INTEGER,
            "timeout_seconds": INTEGER,
            "queued_at": MS,
            "started_at": MS_OR_NULL,
            "updated_at": MS_OR_NULL,
            "finished_at": MS_OR_NULL,
            "deadline_at": MS_OR_NULL,
            "exit_code": {"type": ["integer", "null"]},
            "stdout": TEXT_OR_NULL,
            "stderr": TEXT_OR_NULL,
            "status_details": {"type": ["object", "null"]},
            "reason": TEXT_OR_NULL,
        }
    ),
    "NextJob": {
        "oneOf": [
            record(
                {
                    "job_id": ID,
                    "job_name": TEXT,
                    "timeout_seconds": INTEGER,
                    "job_document": ref("JobDocument"),
                    "version": INTEGER,
                    "execution_number": INTEGER,
                    "status": EXECUTION_STATUS,
                    "started_at": MS_OR_NULL,
                    "deadline_at": MS_OR_NULL,
                }
            ),
            record({"message": {"const": "No pending jobs"}}, closed=True),
        ]
    },
    "StatusUpdate": record(
        {
            "status": choice(["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]),
            "exit_code": {"type": ["integer", "null"]},
            "stdout": TEXT_OR_NULL,
            "stderr": TEXT_OR_NULL,
            "status_details": {"type": ["object", "null"], "description": "at most 8 KiB"},
            "expected_version": {"type": "integer", "minimum": 1},
        },
        required=["status"],
    ),
}

# ---------------------------------------------------------------- shapes: commands

COMMAND_FIELDS: dict[str, Schema] = {
    "device_id": {"type": ["string", "integer"], "description": "the device agent's id"},
    "command_type": {"type": "string", "pattern": COMMAND_TYPE_PATTERN},
    "payload": OBJECT,
    "protocol": choice(["mqtt", "coap"]),
    "parser_script_ref": {"type": "string", "pattern": REF_PATTERN},
    "metadata": {
        "type": "object",
        "description": "MQTT: topic (required), qos, retain; CoAP: path, confirmable",
    },
    "request_id": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID},
    "timestamp": {"type": "string", "format": "date-time"},
    "expires_at": {"type": ["string", "null"], "format": "date-time"},
}
COMMAND = record(
    {
        **COMMAND_FIELDS,
        "device_id": TEXT,
        "agent_id": {"type": ["string", "null"]},
        "status": choice(CommandStatus),
        "reason": TEXT_OR_NULL,
        "attempts": INTEGER,
        "created_ms": MS,
        "updated_ms": MS,
    }
)
PARSER_SCRIPT = record(
    {
        "ref": TEXT,
        "sha256": TEXT,
        "size": INTEGER,
        "origin": TEXT,
        "version": INTEGER,
        "updated_ms": MS_OR_NULL,
    }
)

COMMANDS_SCHEMAS: dict[str, Schema] = {
    "CommandMessage": record(
        COMMAND_FIELDS,
        required=["device_id", "command_type", "protocol", "parser_script_ref"],
        closed=True,
    ),
    "CommandAccepted": record({"request_id": TEXT, "status": choice(CommandStatus)}),
    "Command": COMMAND,
    "ListedCommand": {"allOf": [COMMAND, record({"seq": ID})]},
    "CommandWithHistory": {
        "allOf": [
            COMMAND,
            record(
                {
                    "history": array(
                        record(
                            {
                                "status": choice(CommandStatus),
                                "reason": TEXT_OR_NULL,
                                "at_ms": MS,
                            }
                        )
                    )
                }
            ),
        ]
    },
    "DeviceParser": record({"agent_id": ID, "parser_script_ref": TEXT_OR_NULL, "config": OBJECT}),
    "DeviceParserInput": record({"parser_script_ref": TEXT_OR_NULL, "config": OBJECT}, required=[]),
    "ParserScript": PARSER_SCRIPT,
    "ParserScriptSource": {"allOf": [PARSER_SCRIPT, record({"source": TEXT})]},
}

# ---------------------------------------------------------------- shapes: apps

APP = record(
    {
        "id": ID,
        "app_id": ID,
        "organisation_id": ID,
        "name": TEXT,
        "display_name": TEXT,
        "type": choice(["PRO", "INT"]),
        "kind": choice(["processor", "integration"]),
        "latest_version": INTEGER,
        "created_ms": MS,
        "updated_ms": MS,
    }
)
QUEUED = record({"event_id": TEXT, "status": {"const": "QUEUED"}})

APPS_SCHEMAS: dict[str, Schema] = {
    "App": APP,
    "AppVersion": record(
        {
            "id": ID,
            "app_id": ID,
            "version": INTEGER,
            "package_sha256": TEXT,
            "package_size": INTEGER,
            "handler": TEXT,
            "timeout_seconds": INTEGER,
            "memory_mb": INTEGER,
            "config_schema": OBJECT,
            "created_ms": MS,
        }
    ),
    "AppWithLatest": {"allOf": [APP, record({"latest": ref("AppVersion")})]},
    "DeployedApp": {"allOf": [APP, record({"version": INTEGER, "latest": ref("AppVersion")})]},
    "Deploy": record(
        {
            "doover_config": {"type": "object", "description": "the whole doover_config.json"},
            "app": {"type": ["string", "null"], "description": "which app of it"},
            "package": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "package.zip in base64",
            },
        },
        required=["doover_config", "package"],
    ),
    "Install": record(
        {
            "agent_id": {**ID_IN, "description": "the device; for an integration optional"},
            "config": {"type": "object", "description": "the deployment config"},
            "app_key": TEXT,
        },
        required=[],
    ),
    "Installation": record(
        {
            "id": ID,
            "installation_id": ID,
            "organisation_id": ID,
            "app_id": ID,
            "agent_id": ID,
            "app_agent_id": ID,
            "app_key": TEXT,
            "deployment_config": OBJECT,
            "created_ms": MS,
            "updated_ms": MS,
            "ingestion_path": TEXT,
            "ingestion_token": {"type": "string", "description": "only on one installation"},
            "mini_token": TEXT_OR_NULL,
        },
        optional=["ingestion_path", "ingestion_token", "mini_token"],
    ),
    "InstallationUpdate": record({"config": OBJECT}, required=["config"]),
    "Invoke": record({"payload": ANY}, required=[]),
    "Invocation": record(
        {
            "id": ID,
            "installation_id": ID,
            "app_id": ID,
            "version": INTEGER,
            "agent_id": ID,
            "handler": TEXT,
            "event_id": TEXT,
            "attempt": INTEGER,
            "status": choice(InvocationStatus),
            "started_ms": {"type": "number"},
            "duration_ms": {"type": "number"},
            "error": TEXT_OR_NULL,
            "logs": TEXT,
            "summary": OBJECT,
            "created_ms": MS,
        }
    ),
    "InvokeAnswer": record(
        {
            "event_id": TEXT,
            "installation_id": ID,
            "invocation": ref("Invocation"),
            "status": {"const": "QUEUED"},
        },
        optional=["invocation", "status"],
    ),
    "Queued": QUEUED,
    "DeadLetter": record(
        {
            "id": ID,
            "installation_id": ID,
            "handler": TEXT,
            "event_id": TEXT,
            "event": OBJECT,
            "attempts": INTEGER,
            "error": TEXT,
            "created_ms": MS,
        }
    ),
}

SCHEMAS: dict[str, Schema] = {**DATA_SCHEMAS, **JOBS_SCHEMAS, **COMMANDS_SCHEMAS, **APPS_SCHEMAS}
