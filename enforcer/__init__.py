"""callward enforcer: the policy language (`policy`), the decision (`engine`) and thin adapters."""
