"""Shell completion scripts for bash and zsh, generated from the argument parser."""

from __future__ import annotations

import argparse


def _commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sorted(
                    opt for a in sub._actions for opt in a.option_strings if opt.startswith("--")
                )
    return out


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    cmds = _commands(parser)
    names = " ".join(sorted(cmds))
    if shell == "bash":
        cases = "\n".join(f'        {c}) opts="{" ".join(o)}" ;;' for c, o in sorted(cmds.items()))
        return f"""# bash completion for ketch; load with: source <(ketch completion bash)
_ketch_instances() {{
    ketch list --format csv 2>/dev/null | tail -n +2 | cut -d, -f1
}}
_ketch() {{
    local cur cmd opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{names}" -- "$cur"))
        return
    fi
    cmd="${{COMP_WORDS[1]}}"
    case "$cmd" in
{cases}
        *) opts="" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_ketch_instances)" -- "$cur"))
    fi
}}
complete -F _ketch ketch
"""
    lines = "\n".join(f"    '{c}:{c}'" for c in sorted(cmds))
    return f"""#compdef ketch
# zsh completion for ketch; load with: source <(ketch completion zsh)
_ketch() {{
  local -a commands
  commands=(
{lines}
  )
  if (( CURRENT == 2 )); then
    _describe 'command' commands
  else
    local -a instances
    instances=(${{(f)"$(ketch list --format csv 2>/dev/null | tail -n +2 | cut -d, -f1)"}})
    compadd -a instances
  fi
}}
compdef _ketch ketch
"""
