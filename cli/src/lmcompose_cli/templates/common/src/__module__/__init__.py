"""{{summary}}"""
