"""einattn.templates"""
