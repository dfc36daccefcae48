"""Call an ASGI app in-process, synchronously, under trio: httpx's ``ASGITransport``
inside one ``trio.run`` per request, so the app runs on the event loop it runs on in
the gateway. Cookies the app sets are kept between calls, as a browser would.
"""

from __future__ import annotations

from typing import Any

import httpx
import trio


class AsgiClient:
    def __init__(self, app: Any, base_url: str = "http://127.0.0.1:9144",
                 client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.app = app
        self.base_url = base_url
        self.client = client
        self.cookies = httpx.Cookies()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=self.client)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url,
                                         cookies=self.cookies) as http:
                response = await http.request(method, path, **kwargs)
                self.cookies = httpx.Cookies(http.cookies)
                return response

        return trio.run(call)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)
