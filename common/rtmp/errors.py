"""The one error type the RTMP core raises for anything a peer sends that breaks the protocol."""


class ProtocolError(Exception):
    """The peer violated RTMP (or one of our bounds); the connection must be closed.

    Raised anywhere inside the sans-IO core and translated once at the connection
    boundary into an error state; any other exception escaping the core is a bug.
    """
