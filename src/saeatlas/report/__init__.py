"""Results for people: terminal tables, result files (JSON, CSV, SVG) and the self-contained HTML atlas.

format.py      numbers and labels as text, shared by everything below
svg.py         SVG figures (heatmaps, bars, histograms, interval plots) and their one palette
markup.py      HTML building blocks: safe strings, escaping, tables, figures, sections, token strings
sections/      one module per report section: data from results.json, then its markup
html.py        the report page (render_report, write_report); its style sheet is report.css
text.py        terminal tables of stores, comparisons, absorption and a whole study
files.py       the compare, concepts and absorption stages' result files
contexts.py    each latent's top activating contexts (for the report's pair cards)
"""
