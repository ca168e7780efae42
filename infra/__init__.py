"""Local services: the embedded Tansu broker, SeaweedFS for durable broker storage, Redis."""
