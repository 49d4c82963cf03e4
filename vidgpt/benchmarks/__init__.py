"""Every benchmark of the project, data layer included: each `main()` prints one JSON object. One command
runs them all: `vidgpt-bench NAME [args...]` (`__main__.py`; `vidgpt-bench --help` lists the names)."""
