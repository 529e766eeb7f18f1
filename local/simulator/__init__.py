"""Local simulator of the Aleph providers' HTTP APIs (kie.ai, apikley and Runware).

Written from the providers' documents only: it must import nothing from ``aleph_pipeline`` so
that a client's misreading of a protocol is caught by tests instead of being mirrored here.

Layout: ``server.py`` (HTTP plumbing, ``SimulatorServer``), ``kie.py`` (the kie/apikley
protocol), ``runware.py`` (Runware), ``control.py`` (``/_sim`` API), ``store.py`` (tasks), ``editor.py`` (fetch + ffmpeg
edit), ``callbacks.py`` (webhook sending), ``faults.py`` (fault rules), ``config.py`` (settings).
"""
