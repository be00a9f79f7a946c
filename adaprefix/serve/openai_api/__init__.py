"""The OpenAI-compatible face of ``adaprefix serve`` (as vLLM, LoRAX and TGI expose for many adapters on one LLM):
the adapter is the request's ``model``, so any OpenAI client works unchanged.

:mod:`.protocol` holds the request, answer and error shapes, :mod:`.serving` the work (rows, batches, streams), and
:mod:`.api_router` the routes.
"""
