from graft.cli import run_app

run_app()
