"""The device agent, ``fleetcloud agent`` (seed 003; docs/agent.md).

::

    main.py        the run loop: credentials, banner, signals, the tasks below
    adapter.py     CloudJobsAdapter: poll, report, retry, recover after a restart
    engine.py      JobEngine: steps, final step, parallel, timeouts, handlers
    process.py     one step's process group: output tails, SIGTERM → SIGKILL
    document.py    job documents (pure)
    history.py     history.jsonl and current.json
    local_api.py   the 127.0.0.1 API for device apps
    queue.py       the on-disk store-and-forward queue (SQLite)
    forwarder.py   queue → the cloud's data API
    cloud.py       HTTP clients for the jobs API and the data API
    credentials.py DEVICE_UUID/DEVICE_API_KEY, credentials.json, registration
    config.py      environment variables
    cli.py         ``fleetcloud agent [status|history]``
"""
