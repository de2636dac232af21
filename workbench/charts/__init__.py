"""Chart builders: pure functions from result dataclasses to plotly figures (no Streamlit here).

`trace` draws causal-tracing results (heatmaps, severed-path bars, averaged curves); `export`
turns any figure into PNG bytes offline.
"""
