"""Processing pipelines: declarative steps run on one object (on request or on upload), each
step's output stored as a derived object with lineage."""
