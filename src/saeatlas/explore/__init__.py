"""`saeatlas explore`: a local page over a finished study's matched latents (see server.py for the routes).

study.py reads what the study holds (comparisons, pairs, concepts, absorption roles); latents.py loads one
side's SAE and codes on demand and builds a latent's dashboard; views.py answers each view; server.py serves
them on 127.0.0.1 with the page (page.html, explore.js, explore.css)."""
