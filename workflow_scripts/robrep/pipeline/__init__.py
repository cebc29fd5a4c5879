"""Running the study: config checks, job sizing, cluster glue, verification and the CLI."""
