# Copyright 2026 The rllm_fully_async Authors. Licensed under the Apache License, Version 2.0.
"""``python -m rllm_fully_async.cpu_engine``: parse the flags, bind the socket, serve.

Flag names follow SGLang's ``launch_server`` where both have them (``--model-path``, ``--host``,
``--port``, ``--dtype``, ``--context-length``, ``--weight-version``, ``--random-seed``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Sequence

import torch
import uvicorn

from rllm_fully_async.cpu_engine.server import CpuEngineServer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], prog="python -m rllm_fully_async.cpu_engine"
    )
    parser.add_argument("--model-path", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (reported on stdout)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="most sequences decoded together")
    parser.add_argument(
        "--max-prefill-tokens", type=int, default=16384, help="prompt tokens per prefill pass"
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--context-length", type=int, default=None, help="default: max_position_embeddings")
    parser.add_argument(
        "--weight-version", default="default", help="initial weight version (SGLang: 'default')"
    )
    parser.add_argument(
        "--random-seed", type=int, default=None, help="seeds requests that carry no sampling_seed"
    )
    parser.add_argument("--weight-update-timeout-s", type=float, default=300.0)
    parser.add_argument(
        "--api-key",
        default=None,
        help="as SGLang's: every endpoint but /health needs 'Authorization: Bearer <key>' (default: none)",
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    server = CpuEngineServer(args)
    # Bind first (port 0 = any free port), then report the port: no race with other servers.
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and accepted
    # sockets copy it. Without it every keep-alive response waits ~40 ms (Nagle against delayed ACK).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    server.port = sock.getsockname()[1]
    config = uvicorn.Config(server.app, log_level=args.log_level, timeout_keep_alive=30)
    uvicorn_server = uvicorn.Server(config)

    async def serve() -> None:
        serving = asyncio.create_task(uvicorn_server.serve(sockets=[sock]))
        while not uvicorn_server.started and not serving.done():
            await asyncio.sleep(0.01)
        if uvicorn_server.started:
            server.starting = False
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(f"CPU engine serving on http://{host}:{server.port}", flush=True)
        await serving

    asyncio.run(serve())
