"""Provider adapters: translate the normalized ChatRequest into each upstream's wire format."""
