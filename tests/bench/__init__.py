"""``make bench``: the performance targets of DESIGN.md, measured as ratios within one run.

- ``corpus``        realistic typed messages (boxes with nested classifications, polygons, masks, metrics)
- ``sdk_build``     the same messages the way a user builds them with the Labelbox SDK today
- ``conversion``    bytes -> NDJSON bytes: ours vs the SDK vs bare orjson
- ``broker``        produce, watch a group's commits, the bare-read limit
- ``services``      the sandbox and the worker as subprocesses, with their probes (/proc, /metrics)
- ``sdk_consumer``  the end-to-end baseline: aiokafka + Labelbox SDK per fetched batch
- ``end_to_end``    worker vs baseline vs limit, against one broker and one sandbox
- ``memory``        peak RSS under a slow Labelbox, for two backlogs and two buffer sizes
- ``results`` / ``report``  the tables and the summary
"""
