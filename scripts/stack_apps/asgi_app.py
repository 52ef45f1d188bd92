"""A raw ASGI callable, no framework: the least an asyncio server (uvicorn + httptools + uvloop) costs.

    BENCH_ONNX_MODEL=model.onnx uvicorn --http httptools --loop uvloop --workers 2 asgi_app:app

`session.run` (a few µs for this model) runs on the event loop, as a framework's sync-free endpoint would:
a thread hop per request would cost more than the model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import iris

TEXT = (b"content-type", b"text/plain")


async def app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    status, body = 404, b""
    if scope["method"] == "POST" and scope["path"] == "/":
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        try:
            status, body = 200, iris.predict(b"".join(chunks))
        except (ValueError, KeyError, TypeError) as e:
            status, body = 400, str(e).encode()
    elif scope["path"] == "/readyz":
        iris.session()
        status, body = 200, b"ready"
    await send({"type": "http.response.start", "status": status,
                "headers": [TEXT, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
