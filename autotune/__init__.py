"""einattn.autotune"""
