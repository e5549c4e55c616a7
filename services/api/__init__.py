"""The REST API. Never imports torch: the API image installs none."""
