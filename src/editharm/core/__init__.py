"""Core pieces every phase shares: the typed registry, typed hyperparameters, file I/O (atomic writes,
JSON, checksums, safetensors) and the edit-record schema."""
