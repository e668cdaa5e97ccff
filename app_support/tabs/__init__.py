"""One module per tab of the app (model, score, select, quality = "How much?", export).

Each has ``build(S) -> SimpleNamespace`` (its components, inside its ``gr.Tab``), ``wire(S, T)``
(its events; ``S`` the session's shared state, ``T`` every tab's components) and, where a new model
empties it, ``cleared(t, h) -> {component: value}``. Callbacks return ``{component: value}``.
"""
