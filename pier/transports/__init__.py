"""The wires: each module turns bytes from one protocol into `Registry.call` and back.

None of them knows a verb. `websocket.py` serves JSON-RPC 2.0 over WebSocket with pushed events;
`http.py` serves JSON-RPC 2.0 over HTTP POST and mounts the REST facade on the same listener;
`xmlrpc.py` serves VDSM's legacy XML-RPC at /RPC2; `stomp.py` (with `stomp_outbox.py` and
`stomp_replies.py`) is pierd as a client of a STOMP broker; `vdsm_stomp.py` (with
`vdsm_stomp_connection.py`, `stomp_wire.py` and `stomp_frames.py`) is a small STOMP server
speaking VDSM's dialect, for VDSM's own clients.
"""
