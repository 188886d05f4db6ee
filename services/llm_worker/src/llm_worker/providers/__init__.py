"""Provider adapters (one module per wire API, with a pure mapping module beside it), their
configuration, the factory that builds them and the resolver of `provider/model` names."""
