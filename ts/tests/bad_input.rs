//! Bad input on the `dura-ts` command line gets an error that says what is wrong, exit
//! status 1 (64 for a usage error), and changes nothing in the space.

mod common;

use common::{Cluster, stderr, stdout, temp_dir, tuple};
use dura_engine::runtime::Mode;
use dura_ts::TsClient;
use dura_tuplespace::{Template, TemplateField, Tuple};

/// Every stored tuple, arity by arity (the space holds nothing past 1024 of one arity
/// here).
fn everything(client: &TsClient) -> Vec<Tuple> {
    (1..=dura_tuplespace::tuple::ARITY_MAX)
        .flat_map(|arity| {
            let any = Template::new(vec![TemplateField::Any; arity]).expect("template");
            client.rd_all(&any, 1024).expect("rd_all")
        })
        .collect()
}

#[test]
fn malformed_oversize_and_never_matching_input_is_refused_naming_the_problem() {
    let dir = temp_dir();
    let cluster = Cluster::start(Mode::Crash, dir.path());
    let client = cluster.client();
    client.out(&tuple("('keep', 1)"), None).expect("out");
    client.out(&tuple("('keep', 'two', 0x0102)"), None).expect("out");
    let before = everything(&client);
    assert_eq!(before.len(), 2);

    let field = "x".repeat(dura_tuplespace::tuple::FIELD_BYTES_MAX + 1);
    let long_field = format!("('{field}')");
    let big = "y".repeat(dura_tuplespace::tuple::FIELD_BYTES_MAX);
    let too_large = format!("('{big}', '{big}', '{big}', '{big}', '{big}')");
    let never = format!("('{big}', '{big}', '{big}', '{big}', *int)");
    let seventeen = format!("({})", vec!["1"; 17].join(", "));
    // (arguments, what stderr must say)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["out", "('keep', 1"], "malformed tuple ('keep', 1: column 11"),
        (vec!["out", "keep, 1"], "malformed tuple keep, 1: column 1"),
        (vec!["out", "('keep', *)"], "wildcard * is allowed in a template, not in a tuple"),
        (vec!["out", "()"], "at least one field"),
        (vec!["out", &seventeen], "more than 16 fields"),
        (vec!["out", "(99999999999999999999)"], "malformed tuple"),
        (vec!["out", "('a', 0x123)"], "malformed tuple"),
        (vec!["out", "('\\q')"], "malformed tuple"),
        (vec!["out", &long_field], "16385 bytes, over the bound of 16384"),
        (vec!["out", &too_large], "over the bound of 65536"),
        (vec!["inp", &never], "malformed template"),
        (vec!["in", &never, "--timeout", "1s"], "malformed template"),
        (vec!["count", "('keep', *float)"], "malformed template"),
        (vec!["out", "('keep', 3)", "--lease-ms", "0"], "--lease-ms 0 is outside 1..="),
        (vec!["cas", "('keep', *)", "('keep', 3)", "--lease-ms", "2592000001"], "outside 1..="),
        (vec!["renew", "('keep', *)", "--lease-ms", "0"], "--lease-ms 0 is outside"),
        (vec!["in-all", "('keep', *)", "--limit", "0"], "--limit 0 is outside 1..=1024"),
        (vec!["rd-all", "('keep', *)", "--limit", "1025"], "--limit 1025 is outside 1..=1024"),
        (
            vec!["replace", "('keep', *)", "('keep', *int)"],
            "wildcard *int is allowed in a template",
        ),
    ];
    for (args, says) in &cases {
        let (command, rest) = args.split_first().expect("a command");
        let output = cluster.run(command, rest);
        let text = stderr(&output);
        let shown: String = text.chars().take(300).collect();
        assert_eq!(output.status.code(), Some(1), "{command}: {shown}");
        assert!(text.starts_with("dura-ts: error: "), "{command}: {shown}");
        assert!(text.contains(says), "{command}: expected {says:?} in {shown}");
        assert!(stdout(&output).is_empty(), "{command}: nothing printed on stdout");
    }
    // The never-matching template says why.
    let output = cluster.run("rdp", &[&never]);
    assert!(stderr(&output).contains("can never match"), "{}", stderr(&output));
    // A usage error: its own status.
    let output = cluster.run("in", &["('keep', *)", "--timeout", "5h"]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    assert!(stderr(&output).contains("not a duration"), "{}", stderr(&output));

    assert_eq!(everything(&client), before, "nothing changed");
}

#[test]
fn help_documents_the_exit_statuses_and_the_typed_syntax() {
    for args in [vec!["--help"], vec!["in", "--help"], vec!["cas", "--help"]] {
        let output = common::dura_ts(&args);
        assert!(output.status.success(), "{args:?}");
        let text = stdout(&output);
        for needle in ["Exit status:", "3   cas: a matching tuple exists", "5   rd, in: --timeout"]
        {
            assert!(text.contains(needle), "{args:?} lacks {needle:?}:\n{text}");
        }
    }
    let output = common::dura_ts(&["out", "--help"]);
    assert!(stdout(&output).contains("('job', 7, 'resize')"), "{}", stdout(&output));
    let output = common::dura_ts(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(64), "usage error: {}", stderr(&output));
}
