"""Every benchmark of the project, data layer included: each `main()` prints one JSON object (console
scripts `vidgpt-bench-*`, wrappers in tools/)."""
