"""einattn.examples"""
