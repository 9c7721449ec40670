"""The sampling service, as the server bootstrap runs it.

Its RPCs answer UNIMPLEMENTED until its domain layer lands; health, reflection
and metrics work fully.
"""

from simulacra_services.core.contracts import placeholder_definition

DEFINITION = placeholder_definition("sampling")
