"""The client-facing API shapes besides OpenAI chat/completions/embeddings (``api/proxy.py``).

    base.py        ``Front``: what one API shape changes on the shared proxy path
    responses.py   ``POST /v1/responses`` (OpenAI Responses) and the stored responses
    messages.py    ``POST /v1/messages`` (Anthropic Messages)

``routes.add_fronts`` adds their routes to the proxy sub-app.
"""
