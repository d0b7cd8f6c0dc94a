use super::*;

fn texts(line: &str) -> Vec<Vec<String>> {
    let mut nested = Vec::new();
    let mut out: Vec<Vec<String>> = split(line, &mut nested)
        .into_iter()
        .map(|c| c.into_iter().map(|w| w.text).collect())
        .collect();
    for n in nested {
        out.extend(texts(&n));
    }
    out
}

#[test]
fn splits_on_operators_and_respects_quotes() {
    assert_eq!(
        texts("cd /x && rm -rf 'a b' || echo \"c;d\" | tee f; ls\nls -l"),
        vec![
            vec!["cd", "/x"],
            vec!["rm", "-rf", "a b"],
            vec!["echo", "c;d"],
            vec!["tee", "f"],
            vec!["ls"],
            vec!["ls", "-l"],
        ]
    );
    assert_eq!(
        texts("echo a\\ b 'it'\\''s'"),
        vec![vec!["echo", "a b", "it's"]]
    );
    assert_eq!(
        texts("(cd x; make) & wait"),
        vec![vec!["cd", "x"], vec!["make"], vec!["wait"]]
    );
}

#[test]
fn drops_redirections_comments_and_heredoc_bodies() {
    assert_eq!(
        texts("make 2>&1 >out.log # rm -rf /\ncat <<'EOF' > f\nrm -rf /\nEOF\nls"),
        vec![vec!["make"], vec!["cat"], vec!["ls"]]
    );
    assert_eq!(texts("echo hi &>/dev/null"), vec![vec!["echo", "hi"]]);
}

#[test]
fn command_substitutions_are_commands_too() {
    assert_eq!(
        texts("echo $(rm -rf /) `ls`"),
        vec![
            vec!["echo", "$(…)", "`…`"],
            vec!["rm", "-rf", "/"],
            vec!["ls"]
        ]
    );
}

#[test]
fn values_mark_expansions_and_quoted_specials() {
    let mut nested = Vec::new();
    let words = &split(
        "rm ~ ~/ \"$HOME\" '$HOME' '~' \"/*\" /* ${HOME}/x $OTHER",
        &mut nested,
    )[0];
    let v: Vec<bool> = words[1..]
        .iter()
        .map(|w| is_root_or_home(&w.value))
        .collect();
    assert_eq!(
        v,
        [true, true, true, false, false, false, true, false, false]
    );
}

#[test]
fn prefixes_are_skipped() {
    let mut nested = Vec::new();
    for line in [
        "sudo -u root rm -rf /",
        "env -i FOO=1 rm -rf /",
        "X=1 Y=2 command rm -rf /",
        "exec nohup time nice -n 5 timeout -s KILL 10 rm -rf /",
        "if true; then rm -rf /; fi",
    ] {
        let cmds = split(line, &mut nested);
        assert!(
            cmds.iter()
                .any(|c| program(c).is_some_and(|(p, _)| p.text == "rm")),
            "{line}"
        );
    }
    let cmds = split("command -v rm", &mut nested);
    assert!(program(&cmds[0]).is_none());
}

#[test]
fn never_panics_on_arbitrary_input() {
    // Deterministic pseudo-random lines over an alphabet of shell metacharacters.
    let alphabet: Vec<char> = "rm -rf/~$HOME{}()'\"\\`;&|<>#*\n\tabc=2é".chars().collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        let mut line = String::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for _ in 0..(x % 40) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            line.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        let _ = deletes_root_or_home(&line);
    }
    // Deep nesting stops at MAX_DEPTH instead of recursing without end.
    let deep = "bash -c ".repeat(50) + "'rm -rf /'";
    let _ = deletes_root_or_home(&deep);
    let deep = "$(".repeat(200);
    let _ = deletes_root_or_home(&deep);
}

#[test]
fn shell_c_scripts_are_found() {
    let mut nested = Vec::new();
    let c = &split("/bin/bash -lc 'rm -rf /'", &mut nested)[0];
    assert_eq!(shell_script(&c[1..]), Some("rm -rf /"));
    let c = &split("bash -o pipefail -c 'x'", &mut nested)[0];
    assert_eq!(shell_script(&c[1..]), Some("x"));
    let c = &split("bash script.sh", &mut nested)[0];
    assert_eq!(shell_script(&c[1..]), None);
}
