"""The wires: each module turns bytes from one protocol into `Registry.call` and back.

None of them knows a verb. `websocket.py` serves JSON-RPC 2.0 over WebSocket with pushed events;
`http.py` serves JSON-RPC 2.0 over HTTP POST and mounts the REST facade on the same listener.
"""
