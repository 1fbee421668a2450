"""Fleet jobs: run a job document on many devices and know exactly what happened on each.

Pure parts (no I/O): ``documents`` (job documents, argv, parameters), ``states`` (the
execution state machine), ``templates`` (built-in templates, parameter specs),
``requests`` (API bodies), ``rollout`` (rate, abort and retry decisions), ``model``
(records and their JSON). Store work: ``schema`` (migrations 100-199), ``devices``
(provisioning keys, registration, groups) and ``repo`` (templates, jobs, executions).
``service`` ties them to a running platform: long-poll wake-ups, the clock, and the
background loop that enforces timeouts and advances rollouts.
"""
