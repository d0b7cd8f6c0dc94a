#!/usr/bin/env bash
# A fake `codex exec --json` for the engine tests (tests/engine.rs): fast, deterministic, and
# steered by files in its working directory (the session's working_dir), never by the prompt.
#
# zwarm runs it as `exec --json … -C <dir> … -o <last-message-file> [resume] -- [<thread>] -`
# (older versions: `… [resume <thread>] -- <prompt>`). The prompt is ignored: stdin, where
# zwarm writes it, is drained in the background and never waited on.
#
# Control file `fake.ctl` in the working dir (shell variables, all optional, read every turn):
#   COMMANDS=N        command_execution items (item.started + item.completed) to print: default 1
#   WAIT=1            before printing anything, wait until a file `release` exists
#   STREAM_MS=M       after the COMMANDS, keep printing one command every M ms until `release`
#                     exists (the turn runs until the test lets it finish)
#   HOLD=1            after the COMMANDS, print nothing more until `release` exists
#   MESSAGE='text'    the final agent message (default "fake turn <n> done: <c> commands"); the
#                     file is sourced by the shell, so quote it; no `"` or `\` in it
# `release` is removed when it is seen, so the next turn waits again.
#
# Every invocation appends `<n> new|resume <thread_id>` to `calls.log` (n counts invocations
# in this dir). The thread id is new for a first turn and the one zwarm passes back on `resume`.
# Only shell builtins run per turn (plus `sleep` while waiting), so a turn costs a few ms.

cat <&0 >/dev/null 2>&1 &

dir=""
last=""
thread=""
prev=""
after_resume=""
for a in "$@"; do
  if [ -n "$after_resume" ] && [ "$a" != "--" ]; then
    # `resume <thread>` or `resume -- <thread>`
    thread="$a"
    after_resume=""
  fi
  case "$prev" in
    -C) dir="$a" ;;
    -o) last="$a" ;;
  esac
  [ "$a" = resume ] && after_resume=1
  prev="$a"
done
[ -n "$dir" ] && cd "$dir"

COMMANDS=1
WAIT=""
STREAM_MS=""
HOLD=""
MESSAGE=""
# shellcheck disable=SC1091
[ -f fake.ctl ] && . ./fake.ctl

n=1
if [ -f calls.log ]; then
  mapfile -t seen < calls.log
  n=$(( ${#seen[@]} + 1 ))
fi
if [ -n "$thread" ]; then
  kind=resume
else
  kind=new
  read -r thread < /proc/sys/kernel/random/uuid
fi
echo "$n $kind $thread" >> calls.log

wait_release() {
  while [ ! -e release ]; do sleep 0.02; done
  rm -f release
}

c=0
emit_command() {
  c=$((c + 1))
  printf '{"type":"item.started","item":{"id":"item_%d","type":"command_execution","command":"/bin/bash -lc '"'"'echo cmd-%d'"'"'","aggregated_output":"","exit_code":null,"status":"in_progress"}}\n' "$c" "$c"
  printf '{"type":"item.completed","item":{"id":"item_%d","type":"command_execution","command":"/bin/bash -lc '"'"'echo cmd-%d'"'"'","aggregated_output":"cmd-%d\\n","exit_code":0,"status":"completed"}}\n' "$c" "$c" "$c"
}

[ -n "$WAIT" ] && wait_release

printf '{"type":"thread.started","thread_id":"%s"}\n' "$thread"
printf '{"type":"turn.started"}\n'
i=0
while [ "$i" -lt "$COMMANDS" ]; do
  emit_command
  i=$((i + 1))
done
if [ -n "$STREAM_MS" ]; then
  pause=$(printf '0.%03d' "$STREAM_MS")
  while [ ! -e release ]; do
    emit_command
    sleep "$pause"
  done
  rm -f release
elif [ -n "$HOLD" ]; then
  wait_release
fi

[ -n "$MESSAGE" ] || MESSAGE="fake turn $n done: $c commands"
[ -n "$last" ] && printf '%s' "$MESSAGE" > "$last"
printf '{"type":"item.completed","item":{"id":"item_msg","type":"agent_message","text":"%s"}}\n' "$MESSAGE"
printf '{"type":"turn.completed","usage":{"input_tokens":%d,"cached_input_tokens":0,"output_tokens":%d,"reasoning_output_tokens":0}}\n' $((n * 100)) $((n * 10))
exit 0
