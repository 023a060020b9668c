"""The auction explorer: a static page served by the gateway at `/` (no CDN, no build step).
See docs/DESIGN.md § Looking at an auction."""
