"""The baseline of `scripts/bench`: a bare FastAPI hello-world, served like Warden."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello_get() -> dict[str, str]:
    """The cheapest possible FastAPI route."""
    return {"hello": "world"}


@app.post("/hello")
async def hello_post() -> dict[str, str]:
    """The same, for POST load."""
    return {"hello": "world"}
