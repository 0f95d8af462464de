"""The HTTP edge: what every listener (gateway and dashboard) does before any part sees a request.

Origin and host checks, security headers, and the bounded parse of request bodies. Depends only
on `stockade.core`.
"""
