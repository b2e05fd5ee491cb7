"""The untrusted side of the sandbox: what runs in the worker process (``main`` is its entry point, started
as a script with this folder on its path). Stdlib and RestrictedPython only; the parent imports nothing
from here but ``protocol``, the wire format both sides share."""
