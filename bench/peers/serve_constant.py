"""A bench-only Serve app for bench/serve_ceiling.py: one deployment named like our ``Ingress``,
deployed from configs/serve/digits.yaml's settings (replica CPUs, max_ongoing_requests, queue
bound, autoscaling, logging off, replica-loop env vars) behind the same HAProxy direct ingress,
whose only route reads the request body and answers a canned TF Serving answer of the right size.
No parsing, no model, no metrics: what HTTP, HAProxy and Serve's request path cost on their own.
Imported by the replicas from bench/peers (bench/serve_ceiling.py puts it on PYTHONPATH).
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class.
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve
from tuned_fastapi import MANY_ROWS_BYTES, ROUTE, canned_answers

http = FastAPI()
ONE, MANY = canned_answers()


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress(http)
class ConstantIngress:
    @http.post(ROUTE)
    async def predict(self, request: Request) -> Response:
        body = await request.body()
        return Response(MANY if len(body) > MANY_ROWS_BYTES else ONE, media_type="application/json")


def build_app(args: dict[str, Any]) -> serve.Application:
    return ConstantIngress.bind()
