"""``container-mcp api``: an OpenAI-wire-compatible ``/v1/containers`` REST API.

``create_app(service, settings)`` (in ``app``) builds the Starlette app; ``serve_api`` (in
``serve``) runs it on uvicorn. Nothing is imported here, so importing the package stays cheap.
"""
