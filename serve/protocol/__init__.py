"""The HTTP routes of each wire protocol, as mixins of the ingress deployment."""
