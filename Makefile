# lacme: install the Python package, the systemd units, tmpfiles.d,
# sysusers.d, the generator, the configuration files, the web server
# snippets and the man pages.
#
#   make install                     # into /usr/local, with pip
#   make install DESTDIR=/tmp/stage PREFIX=/usr PIPFLAGS="--no-deps --no-build-isolation"
#   make install VENV=/opt/lacme     # into a virtual environment
#
# Variables:
#   DESTDIR      staging root prepended to every path (packages)
#   PREFIX       /usr/local; units, tmpfiles.d, sysusers.d and the generator
#                go under PREFIX/lib, where systemd looks for them
#   PYTHON       interpreter that runs pip, or that creates VENV; a warning
#                says when the components' users could not run the programs
#   VENV         install the package into this virtual environment (created
#                with "PYTHON -m venv" if absent); BINDIR is then VENV/bin
#   BINDIR       where the programs are, as written into the units
#   SYSCONFDIR   /etc; existing files there are never overwritten: they are
#                listed, and a kept lacme.conf is checked against WIRING
#   WIRING       systemd (default) or fork: which lacme.conf goes to
#                SYSCONFDIR/lacme/lacme.conf; both land in DOCDIR/examples
#   PIPFLAGS     extra pip options
#   MANDIR       PREFIX/share/man; the pages of man/ go to MANDIR/man1,
#                MANDIR/man5 and MANDIR/man8 by their suffix (make install-man)
#   UNITDIR TMPFILESDIR SYSUSERSDIR GENERATORDIR DOCDIR  override one place

DESTDIR ?=
PREFIX ?= /usr/local
PYTHON ?= python3
VENV ?=
BINDIR ?= $(if $(VENV),$(VENV)/bin,$(PREFIX)/bin)
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
GENERATORDIR ?= $(PREFIX)/lib/systemd/system-generators
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DOCDIR ?= $(PREFIX)/share/doc/lacme
MANDIR ?= $(PREFIX)/share/man
WIRING ?= systemd
PIPFLAGS ?=

INSTALL ?= install
PIP_COMMON = --disable-pip-version-check --no-warn-script-location --root-user-action=ignore
CONFDIR = $(DESTDIR)$(SYSCONFDIR)/lacme
# The interpreter the generator runs (the programs' shebangs name the same).
PYEXEC = $(if $(VENV),$(VENV)/bin/python,$(shell command -v $(PYTHON)))
SUBST = sed -e 's|@bindir@|$(BINDIR)|g' -e 's|@docdir@|$(DOCDIR)|g'
# Debian's interpreter adds "/local" to a pip --prefix (its posix_local
# scheme): give it the prefix without it, so that files land in PREFIX.
PIP_PREFIX = $(shell $(PYTHON) -c 'import sys, sysconfig; p = sys.argv[1]; print(p[:-6] if sysconfig.get_default_scheme() == "posix_local" and p.endswith("/local") else p)' '$(PREFIX)')
# Web server snippets for /.well-known/acme-challenge/ (see README.md).
SNIPPETS = nginx.conf nginx-static.conf apache2.conf apache2-static.conf
WIRING_CONF = $(if $(filter systemd,$(WIRING)),etc/systemd/lacme.conf,etc/lacme.conf)

.PHONY: all install install-python install-venv install-prefix install-units \
	install-generator install-etc install-doc install-man check check-wiring check-interpreter

all:
	@echo "nothing to build; see 'make install' (variables at the top of Makefile)"

install: check-wiring install-python check-interpreter install-units install-generator \
	install-etc install-doc install-man

check-wiring:
	@case "$(WIRING)" in systemd|fork) ;; *) echo "Makefile: WIRING=$(WIRING): systemd or fork" >&2; exit 2;; esac

install-python: $(if $(VENV),install-venv,install-prefix)

# A virtual environment: created under DESTDIR, then the first line of its
# scripts is rewritten to name VENV itself, where it will be run from.
install-venv:
	test -x $(DESTDIR)$(VENV)/bin/python || $(PYTHON) -m venv $(DESTDIR)$(VENV)
	$(DESTDIR)$(VENV)/bin/python -m pip install $(PIP_COMMON) $(PIPFLAGS) .
	$(if $(DESTDIR),grep -Il '^#!$(DESTDIR)/' $(DESTDIR)$(VENV)/bin/* | xargs -r sed -i '1s|^#!$(DESTDIR)/|#!/|')

install-prefix:
	$(PYTHON) -m pip install $(PIP_COMMON) $(if $(DESTDIR),--root=$(DESTDIR)) --prefix=$(PIP_PREFIX) $(PIPFLAGS) .

# The interpreter of the installed programs must be one that the components'
# users can run (not a Python under a 0700 home, nor a venv made from one):
# a warning names the directory at fault (lacme(8), "Components run as
# other users").  Under DESTDIR only the interpreter a venv links to is seen.
PROGRAMS_PYTHON = $(if $(VENV),$(DESTDIR)$(VENV)/bin/python,$(PYTHON))

check-interpreter:
	@PYTHONPATH='$(CURDIR)' $(PROGRAMS_PYTHON) -c 'import os, sys; \
	from lacme.core.privs import why_others_cannot_execute; \
	path = os.path.realpath(sys.executable) if sys.argv[1] else sys.executable; \
	why = why_others_cannot_execute(path); \
	why and sys.stderr.write(f"warning: the installed programs run {path}: {why}, so the " \
	"components cannot run as their users; make install VENV=DIR PYTHON=/usr/bin/python3 " \
	"makes a venv they can run (see lacme(8), \"Components run as other users\")\n")' '$(DESTDIR)'

install-units:
	$(INSTALL) -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(SYSUSERSDIR)
	for f in units/*; do \
		$(SUBST) "$$f" > $(DESTDIR)$(UNITDIR)/$${f#units/}.tmp && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$${f#units/}.tmp && \
		mv -f $(DESTDIR)$(UNITDIR)/$${f#units/}.tmp $(DESTDIR)$(UNITDIR)/$${f#units/} || exit 1; \
	done
	$(INSTALL) -m 0644 tmpfiles.d/lacme.conf $(DESTDIR)$(TMPFILESDIR)/lacme.conf
	$(INSTALL) -m 0644 sysusers.d/lacme.conf $(DESTDIR)$(SYSUSERSDIR)/lacme.conf

install-generator:
	$(INSTALL) -d $(DESTDIR)$(GENERATORDIR)
	printf '#!/bin/sh\n# lacme: narrows lacme-renew.service to the certificate paths (lacme/systemd/generator.py)\nexec %s -I -m lacme.systemd.generator "$$@"\n' \
		'$(PYEXEC)' > $(DESTDIR)$(GENERATORDIR)/lacme-generator
	chmod 0755 $(DESTDIR)$(GENERATORDIR)/lacme-generator

# Configuration: never overwrite what is already there, and say what was
# kept.  A kept lacme.conf (Debian's lacme leaves its fork-mode one) is
# checked against WIRING by the configuration reader of this tree.
ETC_FILES = lacme-certs.conf lacme-accountd.conf lacme-certs.conf.d/README $(SNIPPETS)

install-etc:
	$(INSTALL) -d -m 0755 $(CONFDIR) $(CONFDIR)/lacme-certs.conf.d
	@kept=; \
	for f in lacme.conf $(ETC_FILES); do \
		src=etc/$$f; test $$f != lacme.conf || src=$(WIRING_CONF); \
		if test -e $(CONFDIR)/$$f; then kept="$$kept $(CONFDIR)/$$f"; \
		else echo "$(INSTALL) -m 0644 $$src $(CONFDIR)/$$f"; \
			$(INSTALL) -m 0644 $$src $(CONFDIR)/$$f || exit 1; fi; \
	done; \
	if test -n "$$kept"; then echo "kept (existing files are never replaced):$$kept"; fi; \
	case "$$kept " in *" $(CONFDIR)/lacme.conf "*) \
		PYTHONPATH='$(CURDIR)' $(PYTHON) -m lacme.config.wiring '$(WIRING)' '$(DOCDIR)' \
			'$(CONFDIR)/lacme.conf';; esac

install-doc:
	$(INSTALL) -d $(DESTDIR)$(DOCDIR)/examples
	$(INSTALL) -m 0644 docs/systemd.md $(DESTDIR)$(DOCDIR)/systemd.md
	$(INSTALL) -m 0644 etc/lacme.conf $(DESTDIR)$(DOCDIR)/examples/lacme.conf.fork
	$(INSTALL) -m 0644 etc/systemd/lacme.conf $(DESTDIR)$(DOCDIR)/examples/lacme.conf.systemd

install-man:
	$(INSTALL) -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	$(INSTALL) -m 0644 man/*.1 $(DESTDIR)$(MANDIR)/man1
	$(INSTALL) -m 0644 man/*.5 $(DESTDIR)$(MANDIR)/man5
	$(INSTALL) -m 0644 man/*.8 $(DESTDIR)$(MANDIR)/man8

check:
	$(PYTHON) -m pytest -q
