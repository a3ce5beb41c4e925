package RLPDoc;

=pod

=head1 NAME

RLPDoc - the documents of DESIGN.md section 5, rendered by the tests
themselves from the policy catalogue in PostgreSQL (t/020 .. t/023)

=head1 SYNOPSIS

    use lib 't/lib';
    use RLP;
    use RLPDoc;

    --- response_body eval
    RLPDoc::doc(current => 'strict', plan => 0, message => 'policy updated')

    --- response_body_like eval
    RLPDoc::error_re('engine_sync_failed', current_policy => 'strict')

=head1 FUNCTIONS

=over

=item doc(%o)

The success document: C<current> (the effective slug), C<plan> (true:
C<has_active_plan> and every policy available), C<stored> (adds
C<stored_policy>), C<message> (adds C<message>), C<edit> (a sub that
gets the policies as read from the database, hashes with id, slug, name,
description, is_free and limits (an array in column order, undef for
NULL), and returns the list to render: the document of a catalogue that
a block changes later).  The policies come from
C<ratelimit.policies> as it is when doc() is called (in (sort_order, id)
order, NULL limits left out, keys in the column order of section 4), so
a block that changes the catalogue gets the document of the new one.
This is an independent rendering: it shares no code with the module.

=item error_re($code, %o)

A regex for the error document C<{"status":"error","code":"CODE",
"message":"..."}> (any message text), with C<,"current_policy":"SLUG">
after the message when C<current_policy> is given.  Anchored: nothing
else may be in the body.

=item engine_body($instance, $slug)

The body the engine must receive (section 3 / README):
C<{"instance_id":"ID","policy_slug":"SLUG","limits":{...}}> with the
non-NULL limits of C<$slug> in column order.

=item count_tests(@blocks)

The number of tests the runner makes for these blocks (for C<plan>),
counted the way both runners count: per repetition and per request one
for the status, one per C<response_headers> line, one for a body section, one per C<raw_response_headers_(un)like>,
one per C<error_log> / C<no_error_log> pattern and one for
C<grep_error_log>; once per repetition one for C<--- db_check> (or the
C<--- db_unchanged> shorthand of t/020).  Tests that a block's
C<--- init> makes itself are not counted: add them.

=back

=cut

use strict;
use warnings;

use JSON::PP ();

use RLP ();

our @Limits = qw(
    send_message_per_minute send_message_daily_cap
    account_protection_seconds concurrent_limit
    group_req_per_minute group_daily_cap
    check_req_per_minute check_daily_cap
);

my $Json = JSON::PP->new->utf8->allow_nonref;

sub _str { return $Json->encode("$_[0]") }

sub policies {
    my $cols = join ', ', @Limits;
    my $out = RLP::psql(<<"_SQL_");
SELECT json_build_object('id', id, 'slug', slug, 'name', name,
                         'description', description, 'is_free', is_free,
                         'limits', json_build_array($cols))::text
  FROM ratelimit.policies
 ORDER BY sort_order, id;
_SQL_
    return map { $Json->decode($_) } grep { length } split /\n/, $out;
}

sub _limits {
    my $p = shift;
    my @kv;
    for my $i (0 .. $#Limits) {
        my $v = $p->{limits}[$i];
        next unless defined $v;
        push @kv, _str($Limits[$i]) . ':' . (0 + $v);
    }
    return '{' . join(',', @kv) . '}';
}

sub doc {
    my %o = @_;
    my @p = policies();
    @p = $o{edit}->(@p) if $o{edit};
    my $plan = $o{plan} ? 1 : 0;

    my $k = 0;
    my $free = join ',', map { qq("@{[$k++]}":) . _str($_->{slug}) }
                         grep { $_->{is_free} } @p;
    $k = 0;
    my $pol = join ',', map {
        qq("@{[$k++]}":{"id":) . (0 + $_->{id})
        . ',"name":' . _str($_->{name})
        . ',"slug":' . _str($_->{slug})
        . ',"description":' . _str($_->{description})
        . ',"limits":' . _limits($_)
        . ',"available":' . (($_->{is_free} || $plan) ? 'true' : 'false')
        . '}'
    } @p;

    my $d = '{"status":"success","current_policy":' . _str($o{current})
            . ',"has_active_plan":' . ($plan ? 'true' : 'false')
            . ",\"free_policies\":{$free},\"policies\":{$pol}";
    $d .= ',"stored_policy":' . _str($o{stored}) if defined $o{stored};
    $d .= ',"message":' . _str($o{message}) if defined $o{message};
    return "$d}";
}

sub error_re {
    my ($code, %o) = @_;
    my $tail = defined $o{current_policy}
               ? ',"current_policy":' . quotemeta(_str($o{current_policy}))
               : '';
    return qr/\A\{"status":"error","code":"\Q$code\E","message":"[^"\\]+"$tail\}\z/;
}

sub _nreq {
    my $b = shift;
    if (my $p = $b->pipelined_requests) {
        return ref $p eq 'ARRAY' ? scalar @$p : 1;
    }
    return 1 if defined $b->raw_request;
    my $r = $b->request;
    return ref $r eq 'ARRAY' ? scalar @$r : 1;
}

sub _at {
    my ($v, $i) = @_;
    return ref $v eq 'ARRAY' ? $v->[$i] : $v;
}

sub _lines {
    my $v = shift;
    return 0 unless defined $v;
    return 1 if ref $v eq 'Regexp';
    return scalar @$v if ref $v eq 'ARRAY';
    my %seen;
    for my $l (split /\n+/, $v) {
        $l =~ s/^\s+|\s+$//g;
        next unless length $l;
        $l =~ s/^!\s*//;
        my ($k) = split /\s*:\s*/, $l, 2;
        $seen{$k} = 1;
    }
    return scalar keys %seen;
}

sub _patterns {
    my $v = shift;
    return 0 unless defined $v;
    return 1 if ref $v eq 'Regexp';
    return scalar @$v if ref $v eq 'ARRAY';
    chomp(my $s = $v);
    return scalar grep { length } split /\n+/, $s;
}

sub _sec {
    my ($b, $name) = @_;
    return $b->can($name) ? $b->$name : undef;
}

sub count_tests {
    my @blocks = @_;
    my $n = 0;
    for my $b (@blocks) {
        next if defined _sec($b, 'SKIP');
        my $per = 0;
        my $logs = _patterns(_sec($b, 'error_log'))
                   + _patterns(_sec($b, 'no_error_log'))
                   + (defined _sec($b, 'grep_error_log') ? 1 : 0);
        if (defined _sec($b, 'must_die')) {
            $per = 1 + $logs;
        } else {
            my $check = !defined _sec($b, 'ignore_response');
            my $hdrs = _sec($b, 'response_headers')
                       // _sec($b, 'response_headers_like');
            my $body = defined _sec($b, 'response_body')
                       || defined _sec($b, 'response_body_like')
                       || defined _sec($b, 'response_body_unlike');
            for my $i (0 .. _nreq($b) - 1) {
                $per += 1 + _lines(_at($hdrs, $i)) + ($body ? 1 : 0)
                        + (defined _sec($b, 'raw_response_headers_like'))
                        + (defined _sec($b, 'raw_response_headers_unlike'))
                    if $check;
                $per += $logs;
            }
            $per += 1 if $check && (defined _sec($b, 'db_check')
                                    || defined _sec($b, 'db_unchanged'));
        }
        $n += $per;
    }
    return $n * Test::Nginx::Socket::repeat_each();
}

sub engine_body {
    my ($instance, $slug) = @_;
    my ($p) = grep { $_->{slug} eq $slug } policies();
    die "no policy $slug\n" unless $p;
    return '{"instance_id":' . _str($instance) . ',"policy_slug":'
           . _str($slug) . ',"limits":' . _limits($p) . '}';
}

1;
