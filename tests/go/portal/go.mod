module vigie.test/goportal

go 1.19
