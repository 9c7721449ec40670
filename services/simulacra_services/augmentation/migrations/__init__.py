"""The augmentation service's migration chain (revision files; see ``simulacra_services.core.db.migrate``)."""
