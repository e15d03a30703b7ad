"""The built-in architectures: each module's ``build(ctx, **options)`` returns ``(generator, discriminator)`` as the
architecture contract in :mod:`ganplug.plugin` describes."""
