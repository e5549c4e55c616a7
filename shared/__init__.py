"""What the API and the workers share: the wire models (also the SDK's), settings, job state
in Redis (state/), the broker, storage, planning. Never imports torch."""
