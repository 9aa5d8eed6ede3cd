"""Administrator views: users now; compute nodes and jobs join when compute lands."""
