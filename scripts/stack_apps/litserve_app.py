"""The iris model behind LitServe: `python litserve_app.py PORT`, POST /predict with the sample JSON.

`workers_per_device=2` on `accelerator="cpu"` gives two inference worker processes; LitServe puts its own
HTTP servers (FastAPI on uvicorn, as many as inference workers by default) in front of them and hands each
request over a queue. `fast_queue=True` (ZeroMQ instead of multiprocessing queues) is its fastest transport,
so that the comparison is with LitServe at its best. The answer is JSON (`"setosa"`): LitServe encodes
whatever `encode_response` returns.
"""

from __future__ import annotations

import sys

import litserve as ls

import iris


class IrisAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        iris.session()

    def decode_request(self, request: dict) -> dict:
        return request  # FastAPI has already decoded the JSON body

    def predict(self, payload: dict) -> str:
        return iris.label(payload)

    def encode_response(self, output: str) -> str:
        return output


if __name__ == "__main__":
    server = ls.LitServer(IrisAPI(), accelerator="cpu", devices=1, workers_per_device=2, fast_queue=True,
                          timeout=30)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
