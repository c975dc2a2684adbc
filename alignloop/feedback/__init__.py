"""Human feedback: database, web app for raters and admins, JSON API. Never imports torch."""
