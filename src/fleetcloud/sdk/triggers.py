"""Config elements that tell the platform when to invoke an app.

Their keys in the deployment config are fixed, because the runtime reads them:

=============================  ===================================================
``dv_proc_subscriptions``      ``["sensor_data", …]``: channels whose messages
                               invoke ``on_message_create``
``dv_proc_schedules``          ``"rate(5 minutes)"``, ``"cron(0 9 * * ? *)"`` (AWS,
                               six fields), ``"*/5 * * * *"`` (five fields) or
                               ``"disabled"``
``dv_proc_ingestion``          ``{cidr_ranges, signing_key,
                               signing_key_hash_header, throttle, mini_token,
                               never_replace_token}``
``dv_proc_extended_permissions``  ``{devices, groups, apps_installed, all_devices}``
=============================  ===================================================
"""

from __future__ import annotations

from typing import Any

from fleetcloud.sdk.config import Application, Array, Boolean, Integer, Object, String

SCHEDULE_PATTERN = (
    r"^(disabled"
    r"|rate\([1-9][0-9]* (minute|minutes|hour|hours|day|days)\)"
    r"|cron\(\S+( \S+){5}\)"
    r"|\S+( \S+){4})$"
)
MAX_THROTTLE = 30
DEFAULT_THROTTLE = 10
DEFAULT_HMAC_HEADER = "x-hmac-sha256"


class ManySubscriptionConfig(Array):
    """The channels (of the device the app is installed on) that invoke it."""

    def __init__(
        self,
        display_name: str = "Subscriptions",
        *,
        description: str = "Channels whose new messages invoke on_message_create.",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("default", [])
        kwargs.setdefault("unique_items", True)
        element = String("Channel", description="A channel name", min_length=1)
        super().__init__(
            display_name,
            element=element,
            description=description,
            name="dv_proc_subscriptions",
            **kwargs,
        )


class ScheduleConfig(String):
    """When ``on_schedule`` runs: a rate, an AWS or five-field cron, or ``disabled``."""

    def __init__(
        self,
        display_name: str = "Schedule",
        *,
        description: str = (
            'How often on_schedule runs: "rate(5 minutes)", "cron(0 9 * * ? *)", '
            '"*/5 * * * *" or "disabled".'
        ),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("default", "disabled")
        super().__init__(
            display_name,
            description=description,
            pattern=SCHEDULE_PATTERN,
            name="dv_proc_schedules",
            **kwargs,
        )


class IngestionEndpointConfig(Object):
    """How the integration's public ingestion URL checks requests, in this order:
    CIDR allow-list, HMAC-SHA256 of the raw body, throttle, token or mini-token."""

    def __init__(
        self,
        display_name: str = "Ingestion Endpoint",
        *,
        description: str = "Security settings of the ingestion endpoint.",
        **kwargs: Any,
    ) -> None:
        super().__init__(display_name, description=description, name="dv_proc_ingestion", **kwargs)
        self.cidr_ranges = Array(
            "CIDR Ranges",
            element=String("CIDR Range", description="e.g. 203.0.113.0/24 or 2001:db8::/32"),
            default=[],
            description="Accept requests only from these ranges (empty: from anywhere).",
        )
        self.signing_key = String(
            "Signing Key",
            default="",
            description="HMAC-SHA256 key for the raw body (empty: no signature check).",
        )
        self.signing_key_hash_header = String(
            "Signing Key Hash Header",
            default=DEFAULT_HMAC_HEADER,
            description="The request header carrying the hex HMAC-SHA256 of the body.",
        )
        self.throttle = Integer(
            "Throttle",
            default=DEFAULT_THROTTLE,
            minimum=1,
            maximum=MAX_THROTTLE,
            description=f"Requests per second; more are refused with 429 (at most {MAX_THROTTLE}).",
        )
        self.mini_token = Boolean(
            "Mini Token",
            default=False,
            description="Issue a short token for low-bandwidth devices.",
        )
        self.never_replace_token = Boolean(
            "Never Replace Token",
            default=False,
            description="Keep the endpoint's token when the installation is updated.",
        )


class ExtendedPermissionsConfig(Object):
    """Grants an integration access to more agents than its own."""

    def __init__(
        self,
        display_name: str = "Extended Permissions",
        *,
        description: str = "Access to other devices of the organisation.",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            display_name,
            description=description,
            name="dv_proc_extended_permissions",
            **kwargs,
        )
        self.devices = Array(
            "Devices",
            element=String("Device", description="A device's agent id or name"),
            default=[],
            description="Devices this app may read and write.",
        )
        self.groups = Array(
            "Groups", element=String("Group"), default=[], description="Device groups."
        )
        self.apps_installed = Array(
            "Apps Installed",
            element=Application("Application"),
            default=[],
            description="Every device with one of these apps installed.",
        )
        self.all_devices = Boolean(
            "All Devices",
            default=False,
            description="Every device of the organisation (far-reaching).",
        )
