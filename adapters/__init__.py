"""Provider adapters: one `Provider` contract (provider.py), a registry keyed by provider type (registry.py),
and one module per type translating the normalized ChatRequest into that upstream's wire format."""
