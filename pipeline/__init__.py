"""TokenHub core: request context, stages, pipelines, settings, the HTTP app and CLI."""
